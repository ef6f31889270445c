// causal_conv1d, fast prefill: vectorized over channels, threaded over (batch, time tile,
// channel tile). See README.md in this folder for the layout reasoning.
#pragma once

#include <algorithm>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/ssm/causal_conv1d/reference.hpp"

namespace seqmix {
namespace detail {

// --- lane helpers shared by the SSM kernels (causal_conv1d, selective_scan) -------------------
// A "lane group" is up to simd::kWidth channels starting at p with element stride `stride`. The
// full, unit-stride case is one vector load; ragged tails and strided views go through a small
// buffer, so every kernel has a single code path for all views.
using FloatBatch = simd::Batch<float>;

inline FloatBatch load_lanes(const float* p, index_t stride, index_t lanes) noexcept {
  if (stride == 1 && lanes == simd::kWidth) return simd::load(p);
  alignas(64) float buffer[simd::kFloatWidth] = {};
  for (index_t i = 0; i < lanes; ++i) buffer[i] = p[i * stride];
  return FloatBatch::load_aligned(buffer);
}

inline void store_lanes(float* p, index_t stride, index_t lanes, const FloatBatch& v) noexcept {
  if (stride == 1 && lanes == simd::kWidth) {
    simd::store(p, v);
    return;
  }
  alignas(64) float buffer[simd::kFloatWidth];
  v.store_aligned(buffer);
  for (index_t i = 0; i < lanes; ++i) p[i * stride] = buffer[i];
}

// silu(v) = v * sigmoid(v), with the vector exp (no scalar expf).
inline FloatBatch silu(const FloatBatch& v) noexcept {
  return v / (FloatBatch(1.f) + simd::exp(-v));
}

// --- causal_conv1d kernel ----------------------------------------------------------------------

// Tile sizes. A 1024-channel row is 4 KiB: the W rows a tile reads at once stay in L1 (16 KiB at
// W = 4) as the tile walks down time, so each input row comes from memory once, and 4 KiB runs
// stream better than shorter ones (measured: 256 channels was ~25% slower at D = 8192). 64 steps
// per tile leave enough tiles (36 at D = 3328, T = 515) to balance two threads.
constexpr index_t kConvChannelTile = 1024;
constexpr index_t kConvTimeTile = 64;

struct ConvTile {
  index_t b, t0, t1, c0, c1;
  index_t seq = 0;  // which sequence of the call (its views are a batch of one: b = 0)
};

// The tap geometry of a call: tap j of output t reads row t + ahead + j * dilation of
// xs = concat(state (S rows), x (T rows), zeros).
struct ConvTaps {
  index_t dilation = 1, S = 0, ahead = 0;
};

inline ConvTaps conv_taps(index_t W, const CausalConv1dOptions& options) {
  return {options.dilation, (W - 1) * options.dilation, options.lookahead * options.dilation};
}

// Per-task scratch, allocated once per task outside the loops.
struct ConvScratch {
  std::vector<float> weights;     // [W][kConvChannelTile]: the tile's weights, transposed
  std::vector<float> zeros;       // [kConvChannelTile]: stands in for an absent initial state
  std::vector<const float*> rows;  // [W]: xs[t + j] for the current t
  std::vector<index_t> strides;    // [W]: channel stride of rows[j]

  explicit ConvScratch(index_t W)
      : weights(static_cast<std::size_t>(W * kConvChannelTile)),
        zeros(static_cast<std::size_t>(kConvChannelTile), 0.f),
        rows(static_cast<std::size_t>(W)),
        strides(static_cast<std::size_t>(W)) {}
};

// Transposes the tile's weights to [W][channel], so a tap of a channel vector is one load.
inline void conv_transpose_weights(const ConstView<float, 2>& weight, const ConvTile& tile, float* wt) {
  const index_t W = weight.size(1), width = tile.c1 - tile.c0;
  for (index_t j = 0; j < W; ++j)
    for (index_t c = 0; c < width; ++c) wt[j * kConvChannelTile + c] = weight(tile.c0 + c, j);
}

// Points rows[j] at xs[t + ahead + j * dilation] for j < W: a state row, an input row, or zeros
// (no state, or past the end of the sequence).
inline void conv_rows(const CausalConv1dInputs& in, const ConvTaps& taps, const ConvTile& tile, index_t t,
                      ConvScratch& scratch) {
  const index_t W = in.weight.size(1), S = taps.S, T = in.x.size(1);
  for (index_t j = 0; j < W; ++j) {
    const index_t r = t + taps.ahead + j * taps.dilation - S;  // row of x, negative inside the state
    if (r >= T) {
      scratch.rows[j] = scratch.zeros.data(), scratch.strides[j] = 1;
    } else if (r >= 0) {
      scratch.rows[j] = in.x.ptr(tile.b, r, tile.c0), scratch.strides[j] = in.x.stride(2);
    } else if (in.initial_state.has_value()) {
      scratch.rows[j] = in.initial_state.ptr(tile.b, r + S, tile.c0);
      scratch.strides[j] = in.initial_state.stride(2);
    } else {
      scratch.rows[j] = scratch.zeros.data(), scratch.strides[j] = 1;
    }
  }
}

inline FloatBatch conv_bias(const CausalConv1dInputs& in, index_t c, index_t lanes) noexcept {
  return in.bias.has_value() ? load_lanes(in.bias.ptr(c), in.bias.stride(0), lanes) : FloatBatch(0.f);
}

// y[b, t0:t1, c0:c1] for unit channel strides and a tap count known at compile time: the row
// pointers and the tap loop live in registers, one vector load per tap.
template <index_t kTaps>
void conv_tile_fixed(const CausalConv1dInputs& in, const TensorView<float, 3>& y, ConvActivation activation,
                     const ConvTaps& taps, const ConvTile& tile, ConvScratch& scratch) {
  const index_t width = tile.c1 - tile.c0, full = simd::vector_end(width);
  const float* wt = scratch.weights.data();
  for (index_t t = tile.t0; t < tile.t1; ++t) {
    conv_rows(in, taps, tile, t, scratch);
    const float* rows[kTaps];
    for (index_t j = 0; j < kTaps; ++j) rows[j] = scratch.rows[j];
    float* y_row = y.ptr(tile.b, t, tile.c0);
    for (index_t c = 0; c < full; c += simd::kWidth) {
      FloatBatch acc = conv_bias(in, tile.c0 + c, simd::kWidth);
      for (index_t j = 0; j < kTaps; ++j)
        acc = simd::fma(simd::load(wt + j * kConvChannelTile + c), simd::load(rows[j] + c), acc);
      if (activation == ConvActivation::silu) acc = silu(acc);
      simd::store(y_row + c, acc);
    }
    if (full < width) {
      const index_t lanes = width - full;
      FloatBatch acc = conv_bias(in, tile.c0 + full, lanes);
      for (index_t j = 0; j < kTaps; ++j)
        acc = simd::fma(simd::load(wt + j * kConvChannelTile + full), load_lanes(rows[j] + full, 1, lanes), acc);
      if (activation == ConvActivation::silu) acc = silu(acc);
      store_lanes(y_row + full, 1, lanes, acc);
    }
  }
}

// Any W and any strides.
inline void conv_tile_generic(const CausalConv1dInputs& in, const TensorView<float, 3>& y, ConvActivation activation,
                              const ConvTaps& taps, const ConvTile& tile, ConvScratch& scratch) {
  const index_t W = in.weight.size(1), width = tile.c1 - tile.c0;
  const float* wt = scratch.weights.data();
  const index_t y_stride = y.stride(2);
  for (index_t t = tile.t0; t < tile.t1; ++t) {
    conv_rows(in, taps, tile, t, scratch);
    float* y_row = y.ptr(tile.b, t, tile.c0);
    for (index_t c = 0; c < width; c += simd::kWidth) {
      const index_t lanes = std::min<index_t>(simd::kWidth, width - c);
      FloatBatch acc = conv_bias(in, tile.c0 + c, lanes);
      for (index_t j = 0; j < W; ++j) {
        const index_t stride = scratch.strides[j];
        acc = simd::fma(simd::load(wt + j * kConvChannelTile + c),
                        load_lanes(scratch.rows[j] + c * stride, stride, lanes), acc);
      }
      if (activation == ConvActivation::silu) acc = silu(acc);
      store_lanes(y_row + c * y_stride, y_stride, lanes, acc);
    }
  }
}

// Computes y[b, t0:t1, c0:c1].
inline void conv_tile(const CausalConv1dInputs& in, const TensorView<float, 3>& y, ConvActivation activation,
                      const ConvTaps& taps, const ConvTile& tile, ConvScratch& scratch) {
  conv_transpose_weights(in.weight, tile, scratch.weights.data());
  // A tile whose first tap row is past the state never reads it, whatever its layout (a
  // channel-major state has stride W-1 along channels).
  const bool reads_state = tile.t0 + taps.ahead < taps.S && in.initial_state.has_value();
  const bool unit = in.x.stride(2) == 1 && y.stride(2) == 1 && (!reads_state || in.initial_state.stride(2) == 1) &&
                    (!in.bias.has_value() || in.bias.stride(0) == 1);
  switch (unit ? in.weight.size(1) : 0) {
    case 2: return conv_tile_fixed<2>(in, y, activation, taps, tile, scratch);
    case 3: return conv_tile_fixed<3>(in, y, activation, taps, tile, scratch);
    case 4: return conv_tile_fixed<4>(in, y, activation, taps, tile, scratch);  // Mamba's width
    default: return conv_tile_generic(in, y, activation, taps, tile, scratch);
  }
}

// Row r of xs = concat(initial_state (S rows), x) of batch row b, channel d (zeros stand in for
// an absent state).
inline float conv_xs(const CausalConv1dInputs& in, index_t S, index_t b, index_t r, index_t d) {
  if (r >= S) return in.x(b, r - S, d);
  return in.initial_state.has_value() ? in.initial_state(b, r, d) : 0.f;
}

// final_state[b] = the last S rows of xs[b]. Ascending rows read row T + r >= r, so
// final_state may alias initial_state.
inline void conv_write_final_state(const CausalConv1dInputs& in, const TensorView<float, 3>& final_state,
                                   index_t b) {
  const index_t T = in.x.size(1), D = in.x.size(2), S = final_state.size(1);
  for (index_t r = 0; r < S; ++r)
    for (index_t d = 0; d < D; ++d) final_state(b, r, d) = conv_xs(in, S, b, T + r, d);
}

// token_states[b, t] = rows t+1 .. t+S of xs[b]: the window after token t.
inline void conv_write_token_states(const CausalConv1dInputs& in, const TensorView<float, 4>& token_states,
                                    index_t b) {
  const index_t T = in.x.size(1), D = in.x.size(2), S = token_states.size(2);
  for (index_t t = 0; t < T; ++t)
    for (index_t r = 0; r < S; ++r)
      for (index_t d = 0; d < D; ++d) token_states(b, t, r, d) = conv_xs(in, S, b, t + 1 + r, d);
}

// One sequence of a call as a batch of one: its token rows, the state row it starts from (empty
// for zeros) and the outputs it writes.
struct ConvSequence {
  CausalConv1dInputs in;
  TensorView<float, 3> y, final_state;
  TensorView<float, 4> token_states = {};
};

inline std::vector<ConvSequence> conv_sequences(const CausalConv1dInputs& in, const CausalConv1dOutputs& out,
                                                const SequenceMap& map) {
  std::vector<ConvSequence> seqs;
  seqs.reserve(static_cast<std::size_t>(map.sequences()));
  for (index_t n = 0; n < map.sequences(); ++n) {
    const SequenceSpan span = map[n];
    if (span.state_row < 0) continue;  // padding: nothing read or written
    ConvSequence s;
    s.in = in;
    s.in.batch = {};
    s.in.x = sequence_tokens(in.x, span);
    s.in.initial_state = span.read_state ? state_row(in.initial_state, span.state_row) : ConstView<float, 3>();
    s.y = sequence_tokens(out.y, span);
    s.final_state = state_row(out.final_state, span.state_row);
    s.token_states = sequence_tokens(out.token_states, span);
    seqs.push_back(s);
  }
  return seqs;
}

}  // namespace detail

/// Fast prefill. Same arguments and results as reference::causal_conv1d (see reference.hpp); any
/// strides are accepted, unit channel stride is the fast case. A packed or slotted batch is cut
/// into sequences, each a batch of one, and every sequence's tiles go into one parallel pass, so
/// a short sequence costs about its tokens. Scratch: ConvScratch (a W x 1024 weight tile and a few
/// pointers) per task, allocated once per task outside the loops.
inline void causal_conv1d(const CausalConv1dInputs& in, const CausalConv1dOutputs& out,
                          const CausalConv1dOptions& options = {},
                          const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::reversed_call("causal_conv1d", in, out);
    return causal_conv1d(rev.first, rev.second, detail::forward_options(options), executor);
  }
  const auto call = detail::validate_causal_conv1d("causal_conv1d", in, out, options);
  const index_t D = call.dims.D, W = call.dims.W;
  const detail::ConvTaps taps = detail::conv_taps(W, options);
  using detail::kConvChannelTile;
  using detail::kConvTimeTile;
  const std::vector<detail::ConvSequence> seqs = detail::conv_sequences(in, out, call.map);
  const index_t channel_tiles = (D + kConvChannelTile - 1) / kConvChannelTile;
  std::vector<detail::ConvTile> tiles;
  for (std::size_t n = 0; n < seqs.size(); ++n) {
    const index_t T = seqs[n].in.x.size(1);
    // Channel tile fastest: neighbouring tasks share time rows.
    for (index_t t0 = 0; t0 < T; t0 += kConvTimeTile)
      for (index_t c = 0; c < channel_tiles; ++c)
        tiles.push_back({0, t0, std::min(T, t0 + kConvTimeTile), c * kConvChannelTile,
                         std::min(D, (c + 1) * kConvChannelTile), static_cast<index_t>(n)});
  }
  parallel_for(executor, static_cast<index_t>(tiles.size()), 1, [&](index_t begin, index_t end) {
    detail::ConvScratch scratch(W);
    for (index_t i = begin; i < end; ++i) {
      const detail::ConvTile& tile = tiles[static_cast<std::size_t>(i)];
      const detail::ConvSequence& s = seqs[static_cast<std::size_t>(tile.seq)];
      detail::conv_tile(s.in, s.y, options.activation, taps, tile, scratch);
    }
  });
  // After all outputs: final_state may alias initial_state, which the tiles above still read.
  parallel_for(executor, static_cast<index_t>(seqs.size()), 1, [&](index_t begin, index_t end) {
    for (index_t n = begin; n < end; ++n) {
      const detail::ConvSequence& s = seqs[static_cast<std::size_t>(n)];
      if (s.token_states.has_value()) detail::conv_write_token_states(s.in, s.token_states, 0);
      if (s.final_state.has_value()) detail::conv_write_final_state(s.in, s.final_state, 0);
    }
  });
}

}  // namespace seqmix
