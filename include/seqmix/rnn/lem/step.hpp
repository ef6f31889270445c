// lem, decode step: one token per batch row, the state (y, z) updated in place. The fast form's
// run (fast.hpp) with one token, the weights read where they lie (no packing for one token).
#pragma once

#include <vector>

#include "seqmix/rnn/lem/fast.hpp"

namespace seqmix {

/// One LEM token per batch row: reads state [B,2,H] = (y, z) (or pool rows with
/// batch.state_indices), writes y [B,H] and the new state in place. Equal to lem() over one
/// token. options.reverse does not apply (one token).
// A template only so that the run compiles where it is called (docs/compile_time.md).
template <class Deferred = void>
void lem_step(const LemStepInputs& in, const RnnStepOutputs& out, const LemOptions& options = {},
              const Executor& executor = serial_executor()) {
  static const ArgCheck check("lem_step");
  const detail::RnnDims d = detail::validate_lem_step(check, in, out, options);
  const index_t B = d.B, H = d.H, S = detail::kLemStates;
  // The token as a [B,1,.] sequence (stride 0 over the single token).
  const ConstView<float, 3> x(in.x.data(), {B, 1, in.x.size(1)}, {in.x.stride(0), 0, in.x.stride(1)});
  const TensorView<float, 3> y(out.y.data(), {B, 1, H}, {out.y.stride(0), 0, out.y.stride(1)});
  detail::LemRun r{x, y, out.state, out.state, in.w_ih, in.w_hh, in.w_z, in.b_ih, in.b_hh, in.b_z, options.dt};
  // The per-thread scratch of the steps: no heap allocation after warm-up (tests/alloc/alloc_lem.cpp).
  thread_local detail::LemWorkspace ws;
  if (detail::rnn_plain_batch(in.batch)) return detail::lem_run<Deferred>(r, d, false, executor, ws);
  // Slots: the rows' states gathered into a dense [B,2,H] (zeros for a fresh or padding row), one
  // batched step (the weights read once for all rows), then scattered back. Padding rows run on
  // zeros into a scratch y and are written nowhere.
  const IndexList& slots = in.batch.state_indices;
  const FlagList& has_initial = in.batch.has_initial_state;
  auto row_of = [&](index_t b) { return slots.has_value() ? slots[b] : b; };
  std::vector<float>& gathered = ws.gathered;
  std::vector<float>& y_scratch = ws.y_scratch;
  gathered.assign(static_cast<std::size_t>(B * S * H), 0.f);
  y_scratch.resize(static_cast<std::size_t>(B * H));
  for (index_t b = 0; b < B; ++b) {
    const index_t row = row_of(b);
    if (row < 0 || (has_initial.has_value() && !has_initial[b])) continue;
    for (index_t k = 0; k < S; ++k)
      for (index_t j = 0; j < H; ++j) gathered[static_cast<std::size_t>((b * S + k) * H + j)] = out.state(row, k, j);
  }
  const TensorView<float, 3> state(gathered.data(), {B, S, H});
  r.initial = state, r.final_state = state;
  r.y = TensorView<float, 3>(y_scratch.data(), {B, 1, H});
  detail::lem_run<Deferred>(r, d, false, executor, ws);
  for (index_t b = 0; b < B; ++b) {
    const index_t row = row_of(b);
    if (row < 0) continue;
    for (index_t k = 0; k < S; ++k)
      for (index_t j = 0; j < H; ++j) out.state(row, k, j) = gathered[static_cast<std::size_t>((b * S + k) * H + j)];
    for (index_t j = 0; j < H; ++j) out.y(b, j) = y_scratch[static_cast<std::size_t>(b * H + j)];
  }
}

}  // namespace seqmix
